"""Model compiler: model descriptor + compiler options -> keras.Model.

Search and evaluation networks come from the same compiler; the options (seed 000) decide what differs:
auxiliary towers and drop path only in evaluation, affine BatchNorms only in evaluation. Weights are
created from the descriptor's channel counts while the layers are constructed, so compiling traces no
TensorFlow graph at all.
"""
from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from tfnas import ops
from tfnas.descriptors import concat_states, reads_alphas, validate
from tfnas.proto import descriptors_pb2 as pb
from tfnas.runtime import pointwise_matmul

SEARCH_OPTIONS = pb.CompilerOptions(aux_towers=False, drop_path=False, affine=False, group_mixed_edges=True)
EVAL_OPTIONS = pb.CompilerOptions(aux_towers=True, drop_path=True, affine=True)


def drop_path(x, rate, seed_generator):
    """Zeroes whole examples of one edge's output with probability `rate`, rescaling the rest (DARTS)."""
    keep = 1.0 - rate
    # The mask in the (float32) rate's dtype, cast to a lower compute precision's: 1 / keep is not exact there.
    noise = keras.random.uniform([tf.shape(x)[0], 1, 1, 1], seed=seed_generator, dtype="float32")
    return x * tf.cast(tf.floor(keep + noise) / keep, x.dtype)


class Cell(keras.layers.Layer):
    """One cell: preprocess s0 and s1, each node sums its edges, the output concatenates `concat`.

    With `options.group_mixed_edges`, the mixed edges are computed per input state rather than per edge:
    all mixed edges reading state s (same alpha group, candidates, channels and stride) form one
    `MixedOp(copies=k)`, run as soon as s exists; its k outputs go to the nodes the edges feed. With
    `options.lead_edges_apart` the edge into the first node reading s is a group of its own (it is on
    the cell's critical path). Other edges are computed per edge, in their node, in edge order.
    """

    def __init__(self, desc: pb.CellDesc, options: pb.CompilerOptions, **kw):
        super().__init__(name=desc.id or None, autocast=False, **kw)  # the ops own the dtypes (ops/layer.py)
        self.desc = desc
        self.options = options
        self.pre0 = ops.create(desc.s0_op, options)
        self.pre1 = ops.create(desc.s1_op, options)
        self.edges = []  # per node: list of (input states, layer, apply drop path)
        self.groups = {}  # input state -> list of (MixedOp with copies, alpha group, [(node, alpha row)])
        # Group layer id -> the descriptors of the edge ops it computes, copy j = edge j (tfnas.weights).
        self.group_edge_ops = {}
        self._edge_layers = []
        members = {}  # grouping key -> [(node, edge)]
        for n, node in enumerate(desc.nodes):
            node_edges = []
            for edge in node.edges:
                groupable = reads_alphas(edge.op) and ops.registry.op_class(edge.op.name).supports_copies
                if options.group_mixed_edges and groupable and len(edge.inputs) == 1:
                    lead = options.lead_edges_apart and n == max(0, edge.inputs[0] - 1)
                    members.setdefault(_group_key(edge) + (lead,), []).append((n, edge))
                    continue
                layer = ops.create(edge.op, options)
                identity = getattr(layer, "is_identity", False)
                node_edges.append((list(edge.inputs), layer, options.drop_path and not identity))
                self._edge_layers.append(layer)
            self.edges.append(node_edges)
        for key, group in members.items():
            state = key[0]
            layer = ops.create(_group_desc(desc, state, len(self.groups.get(state, [])), group[0][1].op), options,
                               copies=len(group))
            targets = [(n, edge.op.alpha_index) for n, edge in group]
            self.groups.setdefault(state, []).append((layer, group[0][1].op.alpha_group, targets))
            self.group_edge_ops[layer.desc.id] = tuple(edge.op for _, edge in group)
            self._edge_layers.append(layer)
        self.concat = concat_states(desc)
        self.post = ops.create(desc.post_op, options) if desc.post_op.name else None
        self.built = True

    def call(self, s0, s1, edge_weights=None, drop_rate=None, seed_generator=None, training=False,
             update_statistics=True):
        run = dict(training=training, update_statistics=update_statistics)
        states = [self.pre0(s0, **run), self.pre1(s1, **run)]
        pending = [[] for _ in self.edges]  # per node, its edges' outputs so far

        def contribute(node, y, use_drop_path):
            if use_drop_path and training:
                y = drop_path(y, drop_rate, seed_generator)
            pending[node].append(y)

        scaled_rows = {}

        def mixed_weights(op):
            """What a mixed edge reads: its group's candidate weights, and with PC-DARTS's edge normalisation
            each row times its edge's weight (the candidates' weighted sum is then scaled for free; the op
            scales its bypass by `edge_scale`), computed once per cell and pass."""
            if not op.edge_group:
                return dict(weights=edge_weights[op.alpha_group])
            key = (op.alpha_group, op.edge_group)
            if key not in scaled_rows:
                scaled_rows[key] = edge_weights[op.alpha_group] * edge_weights[op.edge_group]
            return dict(weights=scaled_rows[key], edge_scale=edge_weights[op.edge_group])

        def run_groups(state):  # every mixed edge reading `state`, as soon as it exists
            for layer, group, targets in self.groups.get(state, ()):
                rows = tuple(row for _, row in targets)
                for (node, _), y in zip(targets, layer(states[state], rows=rows, **mixed_weights(layer.desc), **run)):
                    contribute(node, y, self.options.drop_path)

        run_groups(0)
        run_groups(1)
        for n, node_edges in enumerate(self.edges):
            for inputs, layer, use_drop_path in node_edges:
                if reads_alphas(layer.desc):
                    y = layer(*[states[i] for i in inputs], rows=(layer.desc.alpha_index,),
                              **mixed_weights(layer.desc), **run)[0]
                else:
                    y = layer(*[states[i] for i in inputs], **run)
                contribute(n, y, use_drop_path)
            states.append(tf.add_n(pending[n]) if len(pending[n]) > 1 else pending[n][0])
            run_groups(len(states) - 1)
        out = tf.concat([states[i] for i in self.concat], axis=-1) if len(self.concat) > 1 else states[self.concat[0]]
        return out if self.post is None else self.post(out, **run)

    def macs(self, h: int, w: int) -> tuple[int, tuple[int, int]]:
        """Multiply-adds of the cell's edges for one example whose preprocessed inputs are h x w, and the
        output resolution. Every node is at the resolution its edges produce (stride 2 in a reduction
        cell for the edges reading the inputs)."""
        state_hw = [(h, w), (h, w)]
        total = 0
        for n, node_edges in enumerate(self.edges):
            node_hw = None
            for inputs, layer, _ in node_edges:
                sizes = [state_hw[i] for i in inputs]
                total += layer.macs_of(sizes)
                node_hw = layer.out_size_of(sizes)
            for state, group in self.groups.items():
                for layer, _, targets in group:
                    if any(node == n for node, _ in targets):  # groups read earlier states only
                        node_hw = layer.out_size(*state_hw[state])
            state_hw.append(node_hw or (h, w))
        for state, group in self.groups.items():
            total += sum(layer.macs(*state_hw[state]) for layer, _, _ in group)
        out_hw = state_hw[self.concat[0]] if self.concat else (h, w)
        if self.post is not None:
            total += self.post.macs(*out_hw)
        return total, out_hw


def _group_key(edge: pb.EdgeDesc) -> tuple:
    """Mixed edges that can share one batched layer: same input, alpha groups, candidates and shape."""
    op = edge.op
    candidates = tuple((c.name, c.stride, c.in_channels, c.out_channels, c.kernel_size) for c in op.candidates)
    return (edge.inputs[0], op.alpha_group, op.edge_group, op.partial_channels, op.stride, op.in_channels,
            op.out_channels, candidates)


def _group_desc(cell: pb.CellDesc, state: int, index: int, first: pb.OpDesc) -> pb.OpDesc:
    """The descriptor of one edge group: the first edge's op, named after the cell and the state it reads
    (`c3.from2`), its candidates after the group (`c3.from2.sep_conv_3x3`)."""
    op = pb.OpDesc()
    op.CopyFrom(first)
    op.id = f"{cell.id}.from{state}" + (f"_{index}" if index else "")
    for cand in op.candidates:
        cand.id = f"{op.id}.{cand.name}"
    return op


class NasModel(keras.Model):
    """A network compiled from a ModelDesc. `call` returns logits; `forward` also the auxiliary logits.

    Architecture parameters (one [edges x primitives] matrix per alpha group) are variables of this
    model, kept apart from the weights: `alphas` and `weights_only` are the two disjoint sets the search
    optimisers update.
    """

    def __init__(self, desc: pb.ModelDesc, options: pb.CompilerOptions = SEARCH_OPTIONS, **kw):
        super().__init__(name=kw.pop("name", "tfnas_model"), autocast=False, **kw)  # as Cell
        validate(desc)
        self.desc = desc
        self.options = options
        self.stem = ops.create(desc.stem, options)
        self.cells = [Cell(c, options) for c in desc.cells]
        self.pool = ops.create(desc.pool, options)
        self.classifier = ops.create(desc.logits, options)
        self.aux = []
        if options.aux_towers:
            self.aux = [(a.after_cell, a.loss_weight, ops.create(a.op, options)) for a in desc.aux_towers]
            self._aux_layers = [t for _, _, t in self.aux]
        self.alpha_vars = {}
        for group in sorted(desc.alpha_groups):
            spec = desc.alpha_groups[group]
            shape = (spec.num_edges, len(spec.primitives))
            init = np.zeros(shape, np.float32)
            if spec.values:
                init = np.asarray(spec.values, np.float32).reshape(shape)
            self.alpha_vars[group] = self.add_weight(
                name=f"alpha_{group}", shape=shape, initializer=keras.initializers.Constant(init))
        self.drop_rate = None
        self.seed_generator = None
        if options.drop_path:
            self.drop_rate = self.add_weight(name="drop_path_rate", shape=(), initializer="zeros", trainable=False)
            self.seed_generator = keras.random.SeedGenerator(0, name="drop_path_seed")
            # A SeedGenerator is not a TF trackable: name its state here so checkpoints carry it, and a
            # resumed evaluation draws the same drop-path masks as an uninterrupted one.
            self.drop_path_seed_state = self.seed_generator.state
        self.built = True

    @property
    def alphas(self) -> list:
        return [self.alpha_vars[g] for g in sorted(self.alpha_vars)]

    @property
    def weights_only(self) -> list:
        """Trainable variables that are not architecture parameters."""
        alpha_ids = {id(a) for a in self.alphas}
        return [v for v in self.trainable_variables if id(v) not in alpha_ids]

    def edge_weights(self) -> dict:
        """Each group's weights, once per forward pass, as alphas.group_weights computes them: softmax(alpha)
        (DARTS), alpha itself (LINEAR: PetriDish) or a softmax over each node's rows (NODE_SOFTMAX:
        PC-DARTS's edge weights); the edges read their rows of it."""
        out = {}
        for group, alpha in self.alpha_vars.items():
            spec = self.desc.alpha_groups[group]
            if spec.weighting == pb.AlphaGroupDesc.LINEAR:
                out[group] = alpha
            elif spec.weighting == pb.AlphaGroupDesc.NODE_SOFTMAX:
                parts = tf.split(alpha, list(spec.node_edges), axis=0)
                out[group] = tf.concat([tf.nn.softmax(p, axis=0) for p in parts], axis=0)
            else:
                out[group] = tf.nn.softmax(alpha, axis=-1)
        return out

    def forward(self, x, training=False, update_statistics=True):
        """(logits, auxiliary logits). `update_statistics=False`: a training pass that normalises by its
        batch and leaves every moving BatchNorm statistic as it was."""
        run = dict(training=training, update_statistics=update_statistics)
        s0 = s1 = self.stem(x, **run)
        weights = self.edge_weights()
        aux_logits = []
        for i, cell in enumerate(self.cells):
            s0, s1 = s1, cell(s0, s1, edge_weights=weights, drop_rate=self.drop_rate,
                              seed_generator=self.seed_generator, **run)
            if training:
                aux_logits.extend(t(s1, **run) for at, _, t in self.aux if at == i)
        return self.classifier(self.pool(s1)), aux_logits

    def call(self, x, training=False, update_statistics=True):
        return self.forward(x, training=training, update_statistics=update_statistics)[0]


def run_options(base: pb.CompilerOptions, runtime) -> pb.CompilerOptions:
    """`base` (SEARCH_OPTIONS or EVAL_OPTIONS) with what a run's `runtime` section (a RuntimeConfig)
    decides for every network it trains: synced BatchNorm, the precision and the 1x1 conv kernel. Search
    and evaluation both derive their options here, so a runtime setting reaches every network or none."""
    options = pb.CompilerOptions()
    options.CopyFrom(base)
    options.sync_batchnorm = runtime.sync_batchnorm
    options.precision = runtime.precision
    options.pointwise_matmul = pointwise_matmul(runtime)
    return options


def compile_model(desc: pb.ModelDesc, options: pb.CompilerOptions = SEARCH_OPTIONS,
                  precision: int | None = None) -> NasModel:
    """`precision` (a CompilerOptions.Precision, as runtime.precision holds) overrides
    `options.precision`. The precision is a compiler option rather than an argument of its own because
    every op reads its options (ops/layer.py), and whatever rebuilds a network from its options
    (tfnas.weights, export) then rebuilds its precision too; the argument only spares a caller that starts
    from a shared constant (EVAL_OPTIONS) copying it to set one field."""
    if precision is not None and precision != options.precision:
        copy = pb.CompilerOptions()
        copy.CopyFrom(options)
        copy.precision = precision
        options = copy
    return NasModel(desc, options)


def count_params(model: NasModel, include_aux: bool = True) -> int:
    """Trainable parameters, architecture parameters excluded (as the DARTS code counts them)."""
    aux_ids = {id(v) for _, _, t in model.aux for v in t.trainable_variables}
    return int(sum(np.prod(v.shape) for v in model.weights_only if include_aux or id(v) not in aux_ids))


def multiply_adds(model: NasModel, include_aux: bool = False) -> int:
    """Multiply-adds of one example (convolutions and dense layers), from the layers' own formulas."""
    h, w = model.desc.input_shape[0], model.desc.input_shape[1]
    total = model.stem.macs(h, w)
    h, w = model.stem.out_size(h, w)
    sizes = [(h, w), (h, w)]  # resolution of s0 and s1 for the next cell
    for i, cell in enumerate(model.cells):
        (h0, w0), (h1, w1) = sizes
        total += cell.pre0.macs(h0, w0) + cell.pre1.macs(h1, w1)
        edge_macs, out_hw = cell.macs(h1, w1)  # both preprocessed inputs are at s1's resolution
        total += edge_macs
        sizes = [sizes[1], out_hw]
        if include_aux:
            total += sum(t.macs(*out_hw) for at, _, t in model.aux if at == i)
    return total + model.classifier.macs(1, 1)
