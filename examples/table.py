"""featcache on a table, as most people keep multi-label data: one row per photo, a text column,
labels by name. Caches two encoders, fits a head, predicts the unlabelled rows and scores a
labelled hold-out.

    .venv/bin/python examples/table.py items.csv                 # your table (columns detected)
    .venv/bin/python examples/table.py                           # a generated one, in a temporary folder

A generated table runs with random-init encoders in about a minute (the numbers mean nothing, it
shows the calls); your table runs with the offline pretrained weights, under table_out/.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import featcache as fc
from featcache.data.synth import make_table

if len(sys.argv) > 1:
    table, holdout, pretrained, work = Path(sys.argv[1]), None, True, Path("table_out")
else:
    work = Path(tempfile.mkdtemp(prefix="featcache-table-"))
    # photos/<n>/IMG_<id>.jpg, a description, tags joined by '|' (empty on the rows to predict)
    table, pretrained = make_table(work / "data", "csv", n_train=200, n_test=20, seed=0), False
    holdout = make_table(work / "holdout", "csv", n_train=50, n_test=0, seed=1)
    print(f"generated {table}")

data = fc.Dataset.from_table(table)  # columns detected; name them with image=, text=[...], labels=, sep=
print(f"{data.name}: {len(data.train)} labelled rows, {len(data.test)} to predict; read as {data.describe}")

for encoder in ("efficientnet_lite0", "minilm_l6"):
    result = fc.extract(data, encoder, cache=work / "cache", pretrained=pretrained, progress=False,
                                 log=lambda m: None, **({"image_size": 32} if not pretrained and "net" in encoder else {}))
    print(f"{result.path}: {result.rows} rows")

model = fc.fit_head(data, ["efficientnet_lite0", "minilm_l6"], cache=work / "cache", runs=work / "runs")
print(f"{model.run_dir}: validation sample-F1 {model.metrics['tuned_out_of_fold']:.4f} out of fold")

row = data.train[0]
print(f"{row.image_id}: predicted {model.predict([data.image_path(row)], [row.caption])[0]}, true {row.labels}")

out = fc.predict(model.run_dir, data, work / "predictions.csv", cache=work / "cache")
print(f"{out}: the rows to predict, with label names")
if holdout is not None:
    scores = fc.evaluate(model.run_dir, holdout)
    print(f"hold-out ({scores['rows']} rows): sample-F1 {scores['tuned']['sample_f1']:.4f} with the run's thresholds")
