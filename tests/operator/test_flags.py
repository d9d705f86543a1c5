"""The operator's copy of the `pagoda serve` contract agrees with the server's."""

from __future__ import annotations

import pytest

from pagoda.operator import flags


def test_managed_flags_are_flags() -> None:
    assert set(flags.MANAGED_FLAGS) <= set(flags.ALL_FLAGS)


def test_every_flag_the_operator_passes_is_one_the_server_defines() -> None:
    args = pytest.importorskip("pagoda.engine.entrypoints.args", reason="the server is not installed")
    served = {f"--{flag.name}" for flag in args.FLAGS}
    # Boolean flags also have their --no- form (argparse.BooleanOptionalAction).
    assert set(flags.ALL_FLAGS) <= served | {f"--no-{name[2:]}" for name in served}
    assert flags.API_KEY_ENV == args.ENV_PREFIX + "API_KEY"


@pytest.mark.parametrize(("field", "flag"), [("quantization", flags.QUANTIZATION),
                                             ("kv_cache_dtype", flags.KV_CACHE_DTYPE),
                                             ("mamba_ssm_cache_dtype", flags.MAMBA_SSM_CACHE_DTYPE),
                                             ("scheduling_policy", flags.SCHEDULING_POLICY)])
def test_the_crd_offers_only_values_the_server_accepts(field: str, flag: str) -> None:
    """An enum of the CRD is the server's choices, or a subset of them (quantization: the ones at load)."""
    import typing

    from pagoda.operator.v1alpha1 import EngineSpec

    args = pytest.importorskip("pagoda.engine.entrypoints.args", reason="the server is not installed")
    served = next(f for f in args.FLAGS if f"--{f.name}" == flag)
    literal = next(a for a in typing.get_args(EngineSpec.model_fields[field].annotation) if a is not type(None))
    assert set(typing.get_args(literal)) <= set(served.choices)
