"""Memory of a server: resident (RSS) and proportional (PSS) size of a process and its children,
read from ``/proc/<pid>/smaps_rollup``. PSS splits shared pages (the memory-mapped bundle) among
the processes that map them, so the PSS sum is what the machine really spends; RSS counts shared
pages once per process."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

PROC = Path("/proc")


@dataclass(frozen=True)
class ProcessMemory:
    pid: int
    command: str
    rss_kib: int
    pss_kib: int
    shared_kib: int  # Shared_Clean + Shared_Dirty
    private_kib: int  # Private_Clean + Private_Dirty

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def children(pid: int, proc: Path = PROC) -> list[int]:
    """Direct and indirect children of ``pid`` (from each process's parent id)."""
    parent_of: dict[int, int] = {}
    for stat in proc.glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:  # the process ended while we looked
            continue
        # comm may contain spaces and parentheses: the fields after the last ')' are fixed.
        fields = text[text.rfind(")") + 2 :].split()
        parent_of[int(stat.parent.name)] = int(fields[1])
    out: list[int] = []
    frontier = [pid]
    while frontier:
        nxt = [p for p, pp in parent_of.items() if pp in frontier]
        out.extend(nxt)
        frontier = nxt
    return sorted(out)


def process_memory(pid: int, proc: Path = PROC) -> ProcessMemory:
    values: dict[str, int] = {}
    for line in (proc / str(pid) / "smaps_rollup").read_text().splitlines():
        parts = line.split()
        if len(parts) >= 3 and parts[-1] == "kB":
            values[parts[0].rstrip(":")] = int(parts[1])
    cmdline = (proc / str(pid) / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    return ProcessMemory(
        pid=pid,
        command=cmdline.strip()[:120],
        rss_kib=values.get("Rss", 0),
        pss_kib=values.get("Pss", 0),
        shared_kib=values.get("Shared_Clean", 0) + values.get("Shared_Dirty", 0),
        private_kib=values.get("Private_Clean", 0) + values.get("Private_Dirty", 0),
    )


def tree_memory(pid: int, proc: Path = PROC) -> list[ProcessMemory]:
    """``pid`` and every descendant still alive."""
    out = []
    for p in [pid, *children(pid, proc)]:
        try:
            out.append(process_memory(p, proc))
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
    return out


def to_markdown(rows: list[ProcessMemory]) -> str:
    lines = [
        "| pid | process | RSS MiB | PSS MiB | shared MiB | private MiB |",
        "|---:|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r.pid} | {r.command[:60]} | {r.rss_kib / 1024:.0f} | {r.pss_kib / 1024:.0f} | "
            f"{r.shared_kib / 1024:.0f} | {r.private_kib / 1024:.0f} |"
        )
    lines.append(
        f"| | **total** | {sum(r.rss_kib for r in rows) / 1024:.0f} | "
        f"{sum(r.pss_kib for r in rows) / 1024:.0f} | | |"
    )
    return "\n".join(lines)
