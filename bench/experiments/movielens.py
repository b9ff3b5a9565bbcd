"""MovieLens 100K, a real public data set, as a recsvc data folder.

The one public recommendation data set with item ids that the package registry serves: RecBole's
wheel carries MovieLens 100K (943 members, 1,682 films, 100,000 ratings between September 1997
and April 1998, GroupLens) as its quick-start example. Nothing is downloaded at run time: fetch
the wheel once from the registry and point this at it (or at the unpacked ``ml-100k`` folder):

    pip download --no-deps recbole==1.2.1 -d /tmp/dl
    python -m bench.experiments.movielens /tmp/dl/recbole-1.2.1-py3-none-any.whl /tmp/ml100k
    recsvc train --data /tmp/ml100k --no-register

How a rating becomes an event is a choice the export forces on any user (``--as``): ``view``
(default) makes every rating one ``view`` (a rating says the member watched the film), which
is what the interaction-matrix literature on this set does; ``positive`` keeps only ratings of 4
and 5, as a ``view``; ``graded`` maps 5 to ``favorite``, 4 to ``click`` and lower to ``view``, so
recsvc's event weights see the grade. A film's category is its first genre, its brand
"MovieLens", its price 0, its ``published_at`` empty (release years are not dates); a member's
``registered_at`` is empty.
"""

from __future__ import annotations

import argparse
import io
import zipfile
from pathlib import Path

import pandas as pd

INNER = "recbole/dataset_example/ml-100k/"
GRADED = {5: "favorite", 4: "click"}


def _read(source: Path, name: str) -> pd.DataFrame:
    """One atomic file (tab separated, ``column:type`` headers) from the wheel or a folder."""
    try:
        if source.suffix == ".whl":
            with zipfile.ZipFile(source) as z:
                raw = z.read(INNER + name)
        else:
            raw = (source / name).read_bytes()
    except (KeyError, OSError, zipfile.BadZipFile) as exc:
        where = f"{source}:{INNER}{name}" if source.suffix == ".whl" else str(source / name)
        raise SystemExit(
            f"movielens: cannot read {where} ({exc}); give RecBole 1.2.1's wheel or its ml-100k folder"
        ) from None
    frame = pd.read_csv(io.BytesIO(raw), sep="\t", dtype=str, keep_default_na=False, quoting=3)
    frame.columns = [c.split(":")[0] for c in frame.columns]
    return frame


def convert(source: Path, out: Path, how: str) -> dict[str, int]:
    inter = _read(source, "ml-100k.inter")
    items = _read(source, "ml-100k.item")
    rating = inter["rating"].astype(float).astype(int)
    if how == "positive":
        liked = rating >= 4
        inter, rating = inter[liked], rating[liked]
    event_type = rating.map(GRADED).fillna("view") if how == "graded" else "view"
    events = pd.DataFrame(
        {
            "member_id": "u" + inter["user_id"],
            "item_id": "m" + inter["item_id"],
            "event_type": event_type,
            "ts": pd.to_datetime(inter["timestamp"].astype(float).astype("int64"), unit="s", utc=True),
            "channel": "app",
            "quantity": 1,
            "amount": 0.0,
        }
    )
    genres = items["class"].str.split(" ").str[0].replace("", "unknown")
    catalog = pd.DataFrame(
        {
            "item_id": "m" + items["item_id"],
            "kind": "product",
            "title": items["movie_title"].where(items["movie_title"] != "", "untitled")
            + " ("
            + items["release_year"]
            + ")",
            "category": genres,
            "brand": "MovieLens",
            "price": 0.0,
            "in_stock": True,
            "published_at": pd.Series(pd.NaT, index=items.index, dtype="datetime64[ns, UTC]"),
        }
    )
    members = pd.DataFrame({"member_id": sorted(events["member_id"].unique())})
    out.mkdir(parents=True, exist_ok=True)
    events.to_parquet(out / "events.parquet", index=False)
    catalog.to_parquet(out / "catalog.parquet", index=False)
    members.to_parquet(out / "members.parquet", index=False)
    return {"events": len(events), "items": len(catalog), "members": len(members)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("source", type=Path, help="RecBole's wheel, or its unpacked ml-100k folder")
    ap.add_argument("out", type=Path)
    ap.add_argument("--as", dest="how", choices=("view", "positive", "graded"), default="view")
    args = ap.parse_args()
    counts = convert(args.source, args.out, args.how)
    print(", ".join(f"{v:,} {k}" for k, v in counts.items()), "->", args.out)


if __name__ == "__main__":
    main()
