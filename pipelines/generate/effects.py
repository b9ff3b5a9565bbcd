"""The effects the sample data plants for the experiment reports to find (docs/experiments.md).

The generated history is what members did before; these are how the same members respond to
what the service serves next. ``truth/effects.json`` holds them, and
``recsvc.experiments.simulate`` plays them against a running server: members in variant ``b``
buy a recommended product more often than members in variant ``a`` (by ``ab_margin``), and
members a campaign reaches buy more often within the attribution window than its held-out
members (by ``campaign_uplift``). ``recsvc report ab`` and ``recsvc report campaign`` should
recover both within their 95 % intervals.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

EFFECTS_FILE = "effects.json"


@dataclass(frozen=True)
class PlantedEffects:
    variants: tuple[str, ...] = ("a", "b")
    click_rate: float = 0.25  # a served list gets a click on its first item
    purchase_rate: float = 0.06  # variant a: a member buys the clicked, recommended product
    ab_margin: float = 0.04  # variant b: purchase_rate + this
    campaign: str = "demo-spring"
    campaign_channel: str = "wecom"
    holdout_share: float = 0.2
    base_purchase_rate: float = 0.05  # held out (or not reached): buys within the window anyway
    campaign_uplift: float = 0.08  # reached: base_purchase_rate + this
    amount: float = 120.0  # the average order

    def conversion(self, variant: str) -> float:
        return self.purchase_rate + (self.ab_margin if variant == self.variants[-1] else 0.0)

    def write(self, truth_dir: Path) -> Path:
        path = truth_dir / EFFECTS_FILE
        path.write_text(json.dumps(asdict(self), indent=2) + "\n")
        return path

    @classmethod
    def read(cls, data_dir: Path) -> PlantedEffects:
        """The effects planted in ``data_dir`` (the defaults for a folder without them)."""
        path = data_dir / "truth" / EFFECTS_FILE
        if not path.is_file():
            return cls()
        raw = json.loads(path.read_text())
        raw["variants"] = tuple(raw.get("variants", cls.variants))
        return cls(**{k: v for k, v in raw.items() if k in cls.__dataclass_fields__})
