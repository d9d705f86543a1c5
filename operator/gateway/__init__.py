"""`pagoda gateway`: one OpenAI-compatible endpoint for every model in the cluster.

Clients send a request naming a `model`; the gateway finds the LLMDeployment
that serves that name (its `servedName` or one of its adapters), picks one of
its ready pods and proxies the request to it, streamed or not. Routing is
prefix-aware: requests that share a prompt prefix (a conversation's turns, a
document asked about several times) go to the same replica, whose prefix cache
already holds it, unless that replica is loaded past a bound; a Kubernetes
Service would spread them at random and every replica would prefill the same
prefix again.

One idea per module: `routes` (the model → endpoints table, a pure function of
the LLMDeployments and EndpointSlices), `discovery` (watching both), `affinity`
(a request's prefix key), `balancer` (picking an endpoint), `proxy` (the HTTP
server), `metrics`, `cli`.
"""
