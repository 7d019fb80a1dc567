"""Figures of one run: printed as one summary block and written as JSON."""

from __future__ import annotations

import json
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class Results:
    arch: str
    mode: str
    started: float = field(default_factory=time.time)
    figures: dict[str, Any] = field(default_factory=dict)  # scenario -> {name: value}
    passed: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    durations_s: dict[str, float] = field(default_factory=dict)

    def put(self, scenario: str, **values: Any) -> None:
        self.figures.setdefault(scenario, {}).update(values)

    def to_json(self) -> dict[str, Any]:
        return {"arch": self.arch, "mode": self.mode, "host": platform.node(),
                "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(self.started)),
                "total_s": round(time.time() - self.started, 1), "passed": self.passed, "failed": self.failed,
                "durations_s": self.durations_s, "figures": self.figures}

    def write(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_json(), indent=2, ensure_ascii=False) + "\n")

    def summary(self) -> str:
        lines = [f"== bangtin system test ({self.arch}, {self.mode}): "
                 f"{'PASS' if not self.failed else 'FAIL'} in {time.time() - self.started:.0f} s"]
        for scenario, values in self.figures.items():
            took = self.durations_s.get(scenario)
            status = "FAIL" if scenario in self.failed else "ok" if scenario in self.passed else "  "
            lines.append(f"{status:4} {scenario}" + (f"  ({took:.0f} s)" if took is not None else ""))
            for name, value in values.items():
                lines.append(f"       {name:32} {_fmt(value)}")
        for scenario, why in self.failed.items():
            if scenario not in self.figures:
                lines.append(f"FAIL {scenario}")
            lines.append(f"       -> {why}")
        return "\n".join(lines)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.2f}"
    if isinstance(value, dict | list):
        return json.dumps(value, ensure_ascii=False)
    return str(value)
