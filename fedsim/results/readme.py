"""Generated results inside a hand-written README: the text between two marker lines."""

from __future__ import annotations

from pathlib import Path


def replace_marked_block(path: Path, start: str, end: str, block: str) -> None:
    """Put ``block`` between the ``start`` and ``end`` markers of ``path`` (markers appended,
    or the file created, when missing); everything outside the markers is kept."""
    text = path.read_text(encoding="utf-8") if path.exists() else f"{start}\n{end}\n"
    if start not in text or end not in text:
        text += f"\n{start}\n{end}\n"
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    path.write_text(f"{head}{start}\n{block}\n{end}{tail}", encoding="utf-8")


def shown_path(path: Path, root: Path) -> str:
    """``path`` as a README names it: relative to the repository ``root`` when inside it, so
    a generated block does not depend on where the repository was cloned."""
    resolved = Path(path).resolve()
    return str(resolved.relative_to(root)) if resolved.is_relative_to(root) else str(path)
