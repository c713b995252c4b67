"""Splicing generated blocks into the README between their markers."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"


def update_readme(blocks: dict[str, str], readme: Path = README) -> bool:
    """Replace each ``<!-- NAME:start -->``..``<!-- NAME:end -->`` block; add missing
    blocks before "## Documentation". Nothing else in the README is touched."""
    if not readme.exists():
        return False
    text = readme.read_text()
    for name, body in blocks.items():
        block = f"<!-- {name}:start -->\n{body.rstrip()}\n<!-- {name}:end -->"
        pattern = re.compile(rf"<!-- {name}:start -->.*?<!-- {name}:end -->", re.DOTALL)
        found = pattern.search(text)
        if found:
            text = text[: found.start()] + block + text[found.end() :]
        elif "\n## Documentation" in text:
            text = text.replace("\n## Documentation", f"\n{block}\n\n## Documentation", 1)
        else:
            text = text.rstrip() + f"\n\n{block}\n"
    readme.write_text(text)
    return True
