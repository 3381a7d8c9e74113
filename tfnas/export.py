"""`tfnas export`: the trained evaluation network as a SavedModel that TF Serving loads.

Layout: <export_dir>/<model_name>/<version>/ (saved_model.pb, variables/, assets/). The `serving_default`
signature takes `images`, a uint8 batch [N, H, W, C] of any batch size (other sizes are resized to the
training size), normalises inside the graph, and returns `probabilities`, `class_id` and `class_name`. The
network is recompiled without auxiliary tower and drop path, and the trained weights are copied in by
variable path (op ids name the layers, checkpoints.load_weights), so neither is in the exported graph or
its variables. The descriptor and the class names travel with the model as assets.

`precision` (export.precision) compiles the serving network in bfloat16 or float16: the layers compute in
the half type while the variables, the normalisation and the probabilities stay float32, so the signature
is the same. Such an export is compared with the float32 network on probe images (fixed random uint8
images of the training size) before it is put in place, and the comparison travels with it in
assets/export_check.json: a half-precision graph is a numerical change a user should see, not assume.

The weights are written as constants of the serving graph (FrozenServingModule), unless `keep_variables`
(export.keep_variables) asks for variables/: a call then reads no variables (hundreds of ReadVariableOps,
a fixed cost that dominates a batch of one), and grappler computes what depends on the weights alone,
such as a folded BatchNorm's kernel scales and the bfloat16 casts of the kernels, once when the model
loads instead of on every call.
"""
from __future__ import annotations

import json
import os

import numpy as np
import tensorflow as tf
# private, stable in the pinned TF range (the TFLite converter's freezing)
from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

from tfnas import checkpoints, compiler, descriptors, files
from tfnas.errors import UserError
from tfnas.evaluation import has_weights
from tfnas.proto import descriptors_pb2 as pb
from tfnas.rundir import DATASET_INFO, MODEL_DESC, WEIGHTS

SERVING_OPTIONS = pb.CompilerOptions(aux_towers=False, drop_path=False, affine=True)
SIGNATURE_INPUT = "images"
CHECK_FILE = "export_check.json"
PROBE_IMAGES = 256
# A GraphDef is one protobuf message, at most 2 GiB: weights beyond this stay variables (keep_variables).
FREEZE_MAX_BYTES = 1 << 30


class ServingModule(tf.Module):
    def __init__(self, net: compiler.NasModel, info: dict, desc_path: str, classes_path: str):
        super().__init__(name="tfnas_serving")
        self.net = net
        # Keras 3 variables wrap tf.Variables that tf.Module does not find by itself: track them here.
        self.net_variables = [v._value for v in net.variables]
        self.image_shape = list(info["image_shape"])
        self.mean = tf.constant(info["mean"], tf.float32)
        self.std = tf.constant(info["std"], tf.float32)
        self.class_names = tf.constant(info["class_names"])
        self.descriptor = tf.saved_model.Asset(desc_path)
        self.classes = tf.saved_model.Asset(classes_path)
        h, w, c = self.image_shape
        self.serve = tf.function(self._serve, autograph=False, input_signature=[
            tf.TensorSpec([None, None, None, c], tf.uint8, name=SIGNATURE_INPUT)])

    def _serve(self, images):
        h, w, _ = self.image_shape
        x = tf.cast(images, tf.float32)
        same = tf.logical_and(tf.equal(tf.shape(x)[1], h), tf.equal(tf.shape(x)[2], w))
        x = tf.cond(same, lambda: x, lambda: tf.image.resize(x, [h, w]))
        x = tf.ensure_shape(x, [None, *self.image_shape])
        x = (x / 255.0 - self.mean) / self.std
        probabilities = tf.nn.softmax(self.net(x, training=False), axis=-1)
        class_id = tf.argmax(probabilities, axis=-1)
        return {"probabilities": probabilities, "class_id": class_id,
                "class_name": tf.gather(self.class_names, class_id)}


class FrozenServingModule(tf.Module):
    """A ServingModule's signature with the network's weights as graph constants (module docstring); the
    assets travel with it, the variables do not."""

    def __init__(self, module: ServingModule):
        super().__init__(name="tfnas_serving")
        concrete = module.serve.get_concrete_function()
        # Control flow stays functional (the resize's cond), as tf.function saves it.
        frozen = convert_variables_to_constants_v2(concrete, lower_control_flow=False)
        structure = concrete.structured_outputs
        self.descriptor, self.classes = module.descriptor, module.classes
        self.serve = tf.function(lambda images: tf.nest.pack_sequence_as(structure, frozen(images)),
                                 autograph=False, input_signature=module.serve.input_signature)


def weight_bytes(net: compiler.NasModel) -> int:
    """The bytes of the network's variables, as constants would hold them (against FREEZE_MAX_BYTES)."""
    return sum(int(np.prod(v.shape)) * tf.dtypes.as_dtype(v.dtype).size for v in net.variables)


def find_eval_dir(run_dir: str | os.PathLike) -> files.AnyPath:
    """The evaluation output inside `run_dir`: the directory itself or its `eval/` phase folder."""
    run = files.path(run_dir)
    for candidate in (run, run / "eval"):
        if (candidate / MODEL_DESC).exists() and has_weights(candidate):
            return candidate
    raise UserError(f"{run}: no finished evaluation here (expected {MODEL_DESC} and {WEIGHTS}, or an eval/ "
                    "folder with them); run `tfnas eval` or `tfnas run` first")


def load_trained(eval_dir: files.AnyPath, options: pb.CompilerOptions = SERVING_OPTIONS
                 ) -> tuple[pb.ModelDesc, compiler.NasModel, dict]:
    """The trained network of an evaluation directory compiled with `options`, its weights loaded by
    path (a serving network has no auxiliary tower or drop path: those trained values are left out)."""
    desc = descriptors.load_model_desc(eval_dir / MODEL_DESC)
    info = json.loads((eval_dir / DATASET_INFO).read_text())
    net = compiler.compile_model(desc, options)
    checkpoints.load_weights(net, eval_dir / WEIGHTS)
    return desc, net, info


def serving_options(precision: int = pb.CompilerOptions.FLOAT32) -> pb.CompilerOptions:
    """The serving network's options at `precision`. A bfloat16 graph folds its BatchNorms into the convs
    before them (CompilerOptions.fold_batchnorm): unfolded, its 36- and 72-channel BatchNorms run apart
    from the convs (over padded channels, ops.batchnorm) and fuse with nothing. A float32 graph needs no
    fold: grappler fuses each conv with its inference BatchNorm by itself, and its remapper (TF 2.20) fails
    on the folded graph's conv + bias + node sum + ReLU where a cell's node sum also feeds the cell's concat
    (bfloat16's ReLU is a Maximum, which that pattern does not match). Float16 is left unfolded until
    measured on the GPUs it is for."""
    options = pb.CompilerOptions()
    options.CopyFrom(SERVING_OPTIONS)
    options.precision = precision
    options.fold_batchnorm = precision == pb.CompilerOptions.MIXED_BFLOAT16
    return options


def precision_check(module: "ServingModule", reference: "ServingModule", images: np.ndarray) -> dict:
    """How far `module`'s outputs are from `reference`'s (the float32 network) on `images`."""
    a, b = module.serve(tf.constant(images)), reference.serve(tf.constant(images))
    pa, pb_ = a["probabilities"].numpy().astype(np.float64), b["probabilities"].numpy().astype(np.float64)
    return {"images": int(len(images)), "max_abs_probability_difference": float(np.abs(pa - pb_).max()),
            "class_agreement": float(np.mean(a["class_id"].numpy() == b["class_id"].numpy())),
            "reference": "the float32 network on fixed random uint8 images of the training size"}


def export(run_dir: str | os.PathLike, export_dir: str | os.PathLike | None = None, model_name: str = "tfnas",
           version: int = 1, precision: int = pb.CompilerOptions.FLOAT32, keep_variables: bool = False
           ) -> files.AnyPath:
    """Writes the SavedModel; refuses to overwrite an existing version (bump `version` instead).
    `keep_variables`: the weights as variables, not as constants of the serving graph (module docstring);
    a network whose weights pass FREEZE_MAX_BYTES keeps them as variables in any case."""
    eval_dir = find_eval_dir(run_dir)
    base = files.path(export_dir) if export_dir else files.path(run_dir) / "export"
    target = base / model_name / str(version)
    if target.exists():
        raise UserError(f"{target} already exists; export under another version (export.version) or remove it")
    desc, net, info = load_trained(eval_dir, serving_options(precision))
    target.parent.mkdir(parents=True, exist_ok=True)
    with files.temporary_directory(target.parent, prefix=f".{version}.") as tmp:
        descriptors.save(desc, tmp / "model_desc.pbtxt")
        (tmp / "classes.txt").write_text("".join(f"{c}\n" for c in info["class_names"]))
        module = ServingModule(net, info, str(tmp / "model_desc.pbtxt"), str(tmp / "classes.txt"))
        if not keep_variables and weight_bytes(net) <= FREEZE_MAX_BYTES:
            module = FrozenServingModule(module)
        if precision != pb.CompilerOptions.FLOAT32:
            _, float32_net, _ = load_trained(eval_dir)
            reference = ServingModule(float32_net, info, str(tmp / "model_desc.pbtxt"), str(tmp / "classes.txt"))
            probes = np.random.default_rng(0).integers(0, 256, (PROBE_IMAGES, *info["image_shape"]), dtype=np.uint8)
            check = {"precision": pb.CompilerOptions.Precision.Name(precision),
                     **precision_check(module, reference, probes)}
            files.write_atomic(tmp / CHECK_FILE, json.dumps(check, indent=1) + "\n")
            module.check = tf.saved_model.Asset(str(tmp / CHECK_FILE))
        saved = tmp / "saved_model"
        tf.saved_model.save(module, str(saved), signatures={"serving_default": module.serve})
        # Local: one atomic rename, so a version folder is complete or absent. Elsewhere (GCS) file by file,
        # saved_model.pb last: a version that has it has everything else.
        files.move_tree(saved, target, last=["saved_model.pb"])
    return target


def reference_predictions(run_dir: str | os.PathLike, images: np.ndarray) -> np.ndarray:
    """Class probabilities of the trained Keras model (no export), for checking an export against."""
    eval_dir = find_eval_dir(run_dir)
    _, trained, info = load_trained(eval_dir, compiler.EVAL_OPTIONS)
    x = (images.astype(np.float32) / 255.0 - np.asarray(info["mean"], np.float32)) / np.asarray(info["std"], np.float32)
    return tf.nn.softmax(trained(x, training=False), axis=-1).numpy()
