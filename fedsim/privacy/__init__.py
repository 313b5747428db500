"""Central differential privacy: Flower's DP strategy wrappers and client clipping mods,
selected by ``[privacy]``, with deterministic noise and an RDP accountant's epsilon.

- which configs make sense: ``fedsim.config.privacy`` (pure; runs wherever a config is parsed);
- ``accountant``: epsilon after k rounds (``dp-accounting``'s RDP accountant);
- ``server``: the wrapped strategy, seeded noise, ``dp-epsilon`` in the train metrics;
- ``client``: the ClientApp mod that clips on the client in the client-side modes.
"""
