"""The bytes every connection sends, chosen so that checking an echo is one memcmp.

Every connection sends the same pseudo-random block, starting at its own offset
(``base``), so the byte at stream position ``p`` of a connection is
``data[(base + p) % PERIOD]``.  An echo that is corrupted, reordered, shifted,
or crossed over from another connection therefore fails the comparison.  The
block is stored twice in a row so that any slice of up to ``CHUNK`` bytes that
starts inside the first copy is contiguous: sends and checks never copy.
"""

import random

# Prime and above 64 KiB: message sizes that are powers of two never line up with
# the period, so a message echoed in place of its neighbour cannot match.
PERIOD = 65_537
# Largest single send or check; at most PERIOD keeps every slice inside ``data``.
CHUNK = 65_536
SEED = 862


class Pattern:
    """The doubled pattern block and the rule that maps positions into it."""

    __slots__ = ("data", "view")

    def __init__(self, seed: int = SEED) -> None:
        block = random.Random(seed).randbytes(PERIOD)
        self.data = block + block
        self.view = memoryview(self.data)

    @staticmethod
    def base(connection_id: int) -> int:
        """Where connection ``connection_id`` starts in the block; spreads neighbours apart."""
        return (connection_id * 40_503 + 1) % PERIOD

    def expected(self, base: int, position: int, length: int) -> memoryview:
        """The ``length`` bytes (``<= CHUNK``) a connection sends from stream ``position``."""
        start = (base + position) % PERIOD
        return self.view[start : start + length]

    def matches(self, received: bytes | bytearray | memoryview, base: int, position: int) -> bool:
        """Whether ``received`` (``<= CHUNK`` bytes) is what was sent from ``position`` on.

        ``bytes.startswith`` at an offset is a memcmp without copying; comparing
        memoryviews with ``==`` goes element by element and is 30x slower at 16 KiB.
        """
        return self.data.startswith(received, (base + position) % PERIOD)
