"""Classify images with a tfnas model served by TF Serving's gRPC API.

    pip install grpcio && pip install --no-deps tensorflow-serving-api
    python export/client_grpc.py --target localhost:8500 --model tfnas images.npy

(`tensorflow-serving-api` pins the full `tensorflow` wheel; --no-deps keeps the TensorFlow you have.)
"""
from __future__ import annotations

import argparse

import numpy as np


def predict_request(images: np.ndarray, model: str = "tfnas"):
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2

    images = np.asarray(images, np.uint8)
    if images.ndim == 3:
        images = images[None]
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model
    request.model_spec.signature_name = "serving_default"
    request.inputs["images"].CopyFrom(tf.make_tensor_proto(images, dtype=tf.uint8))
    return request


def predict(target: str, images: np.ndarray, model: str = "tfnas", timeout: float = 30.0) -> dict:
    import grpc
    import tensorflow as tf
    from tensorflow_serving.apis import prediction_service_pb2_grpc

    with grpc.insecure_channel(target) as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        response = stub.Predict(predict_request(images, model), timeout)
    return {k: tf.make_ndarray(v) for k, v in response.outputs.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("images", help=".npy file with uint8 images")
    parser.add_argument("--target", default="localhost:8500")
    parser.add_argument("--model", default="tfnas")
    args = parser.parse_args()
    out = predict(args.target, np.load(args.images), args.model)
    for i, (cid, name) in enumerate(zip(out["class_id"], out["class_name"])):
        print(f"{i}: class {name.decode()} (id {cid}, p = {out['probabilities'][i].max():.3f})")


if __name__ == "__main__":
    main()
