"""Write a COCO-json dataset restricted to some classes (e.g. person and car) from the COCO sets in
../shared, and a dataset YAML that `litedet train` / `litedet val` read. Images stay where they
are; only the filtered json files and the YAML are written.

    python scripts/coco_subset.py --classes person,car --out runs/data/coco_person_car
    litedet train --config ... --data runs/data/coco_person_car/data.yaml
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

# (name in the YAML, images folder, annotations) relative to the shared data folder
TRAIN = [("coco256", "coco256/images/train2017", "coco256/annotations/instances_train2017.json"),
         ("tiny_coco50", "tiny_coco50/train2017", "tiny_coco50/annotations/instances_train2017.json"),
         ("coco_mini", "coco_mini/train2017", "coco_mini/annotations/instances_train2017.json")]
VAL = ("coco256_val", "coco256/images/val2017", "coco256/annotations/instances_val2017.json")


def subset(source: Path, target: Path, names: list[str]) -> tuple[int, int]:
    """Keep the categories named ``names`` (and their boxes); every image stays. Returns (images, boxes)."""
    data = json.loads(source.read_text())
    known = {c["name"]: c["id"] for c in data["categories"]}
    missing = [n for n in names if n not in known]
    if missing:
        raise SystemExit(f"{source}: no categor{'y' if len(missing) == 1 else 'ies'} {missing}")
    keep = {known[n] for n in names}
    data["categories"] = [c for c in data["categories"] if c["id"] in keep]
    data["annotations"] = [a for a in data["annotations"] if a["category_id"] in keep]
    target.write_text(json.dumps(data))
    return len(data["images"]), len(data["annotations"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--classes", required=True, help="comma-separated COCO class names, e.g. person,car")
    parser.add_argument("--out", required=True, help="folder for the filtered json files and data.yaml")
    parser.add_argument("--shared", default=os.environ.get("LITEDET_SHARED", str(Path(__file__).resolve().parents[2] / "shared")),
                        help="the shared folder (default $LITEDET_SHARED or ../shared)")
    args = parser.parse_args()
    names = [n.strip() for n in args.classes.split(",") if n.strip()]
    data_dir = Path(args.shared).resolve() / "data"
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    train = []
    for name, images, annotations in TRAIN:
        count = subset(data_dir / annotations, out / f"{name}.json", names)
        train.append(f"  - {{images: {images}, annotations: {out / f'{name}.json'}}}")
        print(f"train {name}: {count[0]} images, {count[1]} boxes")
    name, images, annotations = VAL
    count = subset(data_dir / annotations, out / f"{name}.json", names)
    print(f"val {name}: {count[0]} images, {count[1]} boxes")
    (out / "data.yaml").write_text(
        f"# COCO sets from {data_dir} restricted to {', '.join(names)} (scripts/coco_subset.py)\n"
        f"format: coco\npath: {data_dir}\ntrain:\n" + "\n".join(train)
        + f"\nval: {{images: {images}, annotations: {out / f'{name}.json'}}}\n")
    print(f"dataset YAML: {out / 'data.yaml'}")


if __name__ == "__main__":
    main()
