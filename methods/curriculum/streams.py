"""The curriculum's random streams (purposes for ``fedsim.seeding.derive_seed``).

Their numbers predate the registry's stream declarations and are kept, so results of
earlier releases stay reproducible; the method declares them (``Method.streams``) and the
registry refuses any other method or the engine using the same numbers.
"""

CURRICULUM_ORDER = 7  # data curriculum: 'random' sample order
CLIENT_CURRICULUM = 8  # client curriculum: random client order, the round's draw
STREAMS = {"curriculum.order": CURRICULUM_ORDER, "curriculum.client-order": CLIENT_CURRICULUM}
