"""featcache from Python: cache two encoders, fit a head, predict a new photo and caption, and
write the submission.

    .venv/bin/python examples/quickstart.py /path/to/comp5329      # your data (train.csv, test.csv, data/)
    .venv/bin/python examples/quickstart.py                       # $FEATCACHE_DATA, or else generated data

Your data runs with the offline pretrained weights (the two extractions take a few minutes on a
CPU), and everything is written under quickstart_out/. Generated data runs with random-init
encoders in a temporary folder, in about a minute: the numbers mean nothing, it shows the calls.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import featcache as fc
from featcache.data.synth import make_dataset

if len(sys.argv) > 1 or os.environ.get("FEATCACHE_DATA"):
    data, pretrained, work = Path(sys.argv[1] if len(sys.argv) > 1 else os.environ["FEATCACHE_DATA"]), True, Path("quickstart_out")
    print(f"{data} -> {work}/")
else:
    work = Path(tempfile.mkdtemp(prefix="featcache-quickstart-"))
    data, pretrained = make_dataset(work / "data", n_train=300, n_test=40, seed=0), False
    print(f"generated a dataset in {data}")

# Stage 1: each encoder runs once over every photo and caption; its features go to an HDF5 cache.
for encoder in ("efficientnet_lite0", "minilm_l6"):
    result = fc.extract(data, encoder, cache=work / "cache", pretrained=pretrained, progress=False, log=lambda m: None)
    print(f"{result.path}: {result.rows} rows")

# Stage 2: a late-fusion head on the cached features, with thresholds tuned on the validation part.
model = fc.fit_head(data, ["efficientnet_lite0", "minilm_l6"], cache=work / "cache", runs=work / "runs")
print(f"{model.run_dir}: validation sample-F1 {model.metrics['tuned_out_of_fold']:.4f} out of fold")

# The saved run takes new photos (paths or PIL images) and captions; fc.load(model.run_dir) reopens it.
row = fc.load_dataset(data).test[0]
photo = Path(data) / "data" / row.image_id
print(f"{row.image_id} '{row.caption}': labels {model.predict([photo], [row.caption])[0]}")

# The Kaggle submission for test.csv.
submission = fc.predict(model.run_dir, data, work / "submission.csv", cache=work / "cache")
print(f"{submission}: ready to submit")
