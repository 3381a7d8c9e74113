"""Classify images with a tfnas model served by TF Serving's REST API (standard library only).

    python export/client_rest.py --url http://localhost:8501/v1/models/tfnas:predict images.npy

`images.npy` holds a uint8 array [N, H, W, C] (or [H, W, C] for one image), as the model was trained on.
"""
from __future__ import annotations

import argparse
import json
import urllib.request

import numpy as np


def rest_request(images: np.ndarray) -> dict:
    """The TF Serving REST "row" format: one instance per image, for the `serving_default` signature."""
    images = np.asarray(images, np.uint8)
    if images.ndim == 3:
        images = images[None]
    return {"signature_name": "serving_default", "instances": [{"images": im.tolist()} for im in images]}


def predict(url: str, images: np.ndarray, timeout: float = 30.0) -> list[dict]:
    body = json.dumps(rest_request(images)).encode()
    request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.loads(response.read())["predictions"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("images", help=".npy file with uint8 images")
    parser.add_argument("--url", default="http://localhost:8501/v1/models/tfnas:predict")
    args = parser.parse_args()
    for i, p in enumerate(predict(args.url, np.load(args.images))):
        print(f"{i}: class {p['class_name']} (id {p['class_id']}, p = {max(p['probabilities']):.3f})")


if __name__ == "__main__":
    main()
