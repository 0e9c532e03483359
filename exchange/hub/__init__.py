"""Hubs: separate RabbitMQ installations linked by RabbitMQ's own shovel plugin (docs/FEDERATION.md).

``links`` declares a link (alternate exchange on ``{prefix}.route``, the link queue, its bindings,
one least-privilege user per side and the dynamic shovel) through each broker's management HTTP
API; ``status`` reads each link's shovel state, backlog and oldest waiting message; ``config`` reads
the ``[hub]`` section of a node's TOML.
"""
