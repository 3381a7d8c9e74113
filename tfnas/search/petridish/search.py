"""The PetriDish loop itself (algorithm.py has its outline): models, warm starts, loops, the gallery."""
from __future__ import annotations

import numpy as np

from tfnas import checkpoints, compiler, describe, descriptors, draw, faults, rundir
from tfnas.proto import config_pb2, search_pb2
from tfnas.proto import descriptors_pb2 as pb
from tfnas.search import petridish
from tfnas.search.petridish import gallery as gallery_lib

Pick = config_pb2.PetridishConfig.Pick


def phase_seed(seed: int, iteration: int, phase: str) -> int:
    """The seed of one loop's new weights and data order: (seed, iteration, phase) alone."""
    return int(np.random.default_rng([seed, iteration, checkpoints.PETRIDISH_PHASES.index(phase)]).integers(2**31 - 1))


MODEL_FILE, WEIGHTS_FILE = "model.pbtxt", "weights"


def hand_on(out, desc: pb.ModelDesc, net: compiler.NasModel) -> None:
    """A PetriDish loop's outputs: the model it ends with, descriptor and weights."""
    checkpoints.save_weights(net, out / WEIGHTS_FILE)
    descriptors.save(desc, out / MODEL_FILE)


def warm_start(net: compiler.NasModel, parent: compiler.NasModel | None, grow: bool):
    """Gives `net` every weight of `parent` by op id; with `grow`, weights that grew on one axis keep the
    parent's values in front. Every weight of the parent must find its place (a PetriDish rebuild drops
    nothing), and only the new ops' weights stay as initialised. Returns the restore report (None
    without a parent)."""
    from tfnas import weights
    if parent is None:
        return None
    report = weights.restore(net, parent, strict=False, grow=grow)
    if report.missing or report.reshaped:
        lost = report.missing + [k for k, _, _ in report.reshaped]
        raise ValueError(f"PetriDish rebuild of {net.desc.source or 'the model'} loses parent weights: "
                         f"{', '.join(lost[:5])}")
    return report


class PetridishSearch:
    """One PetriDish search on a SearchRun (search/runner.py)."""

    def __init__(self, run):
        self.run = run
        self.config = run.config
        self.p = run.config.search.petridish
        self.gallery = search_pb2.Gallery()
        path = run.out / rundir.GALLERY_STATE
        if path.exists():  # rows of finalised models are kept: a resumed search does not re-measure them
            descriptors.from_bytes(path.read_bytes(), self.gallery, "text", str(path))

    # --- the loop ---------------------------------------------------------------------------------------

    def search(self) -> pb.ModelDesc | None:
        p, run = self.p, self.run
        faults.point(checkpoints.PETRIDISH, "before")
        desc = petridish.seed_model(run.macro_desc, skip=not p.empty_seed)
        desc.source = f"petridish search ({self.config.name or 'unnamed'})"
        parent = None
        for i in range(1, p.n_search_iter + 1):
            if p.pre_train.epochs > 0 and petridish.needs_pre_training(desc, i):
                parent = self.pre_train(desc, parent, i)
                if parent is None:
                    return None
                self.record(i, "pretrain", desc, parent)
            if not checkpoints.is_done(run.out, checkpoints.petridish_key(i, "archtrain")):
                grown = petridish.grow(desc, i, list(p.primitives), p.kept_candidates, p.candidate_init_scale,
                                       run.seed)
                grown.source = desc.source
                if not self.arch_train(grown, parent, i):
                    return None
            desc, parent = self.load(i, "archtrain")
            if self.record(i, "search", desc, parent):
                self.summarise(i)
        checkpoints.commit(run.out, checkpoints.PETRIDISH)
        final, entry = self.pick()
        run.save_final_weights(self.load(entry.iteration, "archtrain" if entry.phase == "search" else entry.phase)[1])
        return final

    def compile(self, desc: pb.ModelDesc, iteration: int, phase: str) -> compiler.NasModel:
        """`desc` compiled with its new weights drawn from (seed, iteration, phase)."""
        return self.run.compile(desc, phase_seed(self.run.seed, iteration, phase))

    def load(self, i: int, phase: str) -> tuple[pb.ModelDesc, compiler.NasModel]:
        """The model a finished loop handed on: (its descriptor, compiled with the weights it committed)."""
        out = checkpoints.outputs_dir(self.run.out, checkpoints.petridish_key(i, phase))
        desc = descriptors.load_model_desc(out / MODEL_FILE)
        net = self.run.compile(desc)
        checkpoints.load_weights(net, out / WEIGHTS_FILE)
        return desc, net

    def pre_train(self, desc, parent, i: int):
        """The parent trained for pre_train.epochs (the seed's train(model, pre_train_epochs)), as the loop
        `iter-<i>/pretrain` hands it on; None if the loop stopped early on purpose."""
        from tfnas.train import optim
        from tfnas.train.supervised import SupervisedTrainer

        run, pre = self.run, self.p.pre_train
        key = checkpoints.petridish_key(i, "pretrain")
        if not checkpoints.is_done(run.out, key):
            net = self.compile(desc, i, "pretrain")
            warm_start(net, parent, grow=False)
            stream = run.stream(run.weight_split, phase_seed(run.seed, i, "pretrain"), pre)
            steps = run.steps_per_epoch([stream], pre)
            trainer = SupervisedTrainer(net, optim.make_optimizer(pre.optimizer, pre.epochs, steps, "optimizer"),
                                        pre.optimizer)
            if run.verbose:
                print(f"PetriDish iteration {i}/{self.p.n_search_iter}: pre-training "
                      f"({petridish.nodes_per_cell(desc)} nodes per cell)")
            _, done = run.train(key, trainer, [stream], pre.epochs, steps, trainer_config=pre,
                                outputs=lambda out, logs: hand_on(out, desc, net))
            if not done:
                return None
        return self.load(i, "pretrain")[1]

    def arch_train(self, grown, parent, i: int) -> bool:
        """Arch-trains the grown network as the loop `iter-<i>/archtrain`, which hands on the finalised
        descriptor and model (the chosen candidates' trained weights, joins started as their weighted
        sum); False if the loop stopped early on purpose."""
        from tfnas import weights
        from tfnas.ops.petridish import PetriDishJoin
        from tfnas.train import optim
        from tfnas.train.supervised import SupervisedTrainer

        run, s = self.run, self.config.search
        net = self.compile(grown, i, "archtrain")
        warm_start(net, parent, grow=True)
        stream = run.stream(run.weight_split, phase_seed(run.seed, i, "archtrain"))
        steps = run.steps_per_epoch([stream])
        trainer = SupervisedTrainer(net, optim.make_optimizer(s.trainer.optimizer, s.trainer.epochs, steps,
                                                              "optimizer"), s.trainer.optimizer, l1=self.p.l1)
        if run.verbose:
            print(f"PetriDish iteration {i}/{self.p.n_search_iter}: arch-training node {i} of every cell")

        def finalise(out, logs):
            alphas = {g: v.numpy() for g, v in net.alpha_vars.items()}
            final_desc = petridish.finalize(grown, alphas)
            final = self.compile(final_desc, i, "archtrain")
            report = weights.restore(final, net, strict=False)  # the chosen candidates keep their weights
            new_ops = {key.split("/")[0] for key in report.new}
            for cell in final.cells:
                for _, layer, _ in (e for node in cell.edges for e in node):
                    if isinstance(layer, PetriDishJoin) and layer.desc.id in new_ops:
                        layer.start_as_sum()
            hand_on(out, final_desc, final)

        _, done = run.train(checkpoints.petridish_key(i, "archtrain"), trainer, [stream], s.trainer.epochs,
                            steps, outputs=finalise)
        return done

    # --- the gallery ------------------------------------------------------------------------------------

    def record(self, iteration: int, phase: str, desc: pb.ModelDesc, net: compiler.NasModel) -> bool:
        """Adds the gallery row of a finalised model and writes the gallery files; False if a resumed search
        already has the row."""
        run = self.run
        for entry in self.gallery.entries:
            if entry.iteration == iteration and entry.phase == phase:
                return False
        size = describe.describe(desc, phase)  # what `tfnas describe` reports of it
        error = 1.0 - run.accuracy(net, run.arch_split)
        entry = self.gallery.entries.add(index=len(self.gallery.entries), iteration=iteration, phase=phase,
                                         nodes=petridish.nodes_per_cell(desc), params=size["params"],
                                         multiply_adds=size["multiply_adds"], val_error=error)
        run.save(f"{rundir.GALLERY_DIR}/{entry.index}.pbtxt", desc)
        points = gallery_lib.gallery_points(self.gallery)
        hull = gallery_lib.lower_hull(points)
        run.save(rundir.GALLERY_TSV, gallery_lib.gallery_tsv(self.gallery, hull))
        title = f"PetriDish gallery: {self.config.name or 'unnamed'}"
        run.save(rundir.GALLERY_PNG, draw.png_bytes(gallery_lib.plot(self.gallery, hull, title)))
        run.save(rundir.GALLERY_STATE, descriptors.to_bytes(self.gallery, "text"))  # last: the row is recorded
        if run.verbose:
            print(f"gallery #{entry.index}: iteration {iteration} {phase}, {entry.nodes} nodes, "
                  f"{entry.multiply_adds:,} multiply-adds, val_error {error:.4f}")
        return True

    def summarise(self, iteration: int) -> None:
        """TensorBoard: one step per iteration."""
        import tensorflow as tf
        rows = {e.phase: e for e in self.gallery.entries if e.iteration == iteration}
        hull = gallery_lib.lower_hull(gallery_lib.gallery_points(self.gallery))
        with self.run.writer.as_default(step=iteration):
            for phase, e in rows.items():
                tf.summary.scalar(f"petridish/{phase}/val_error", e.val_error)
                tf.summary.scalar(f"petridish/{phase}/multiply_adds", e.multiply_adds)
                tf.summary.scalar(f"petridish/{phase}/params", e.params)
            tf.summary.scalar("petridish/nodes", rows["search"].nodes)
            tf.summary.scalar("petridish/hull_models", len(hull))
            tf.summary.scalar("petridish/best_val_error", min(e.val_error for e in self.gallery.entries))
        self.run.writer.flush()

    def pick(self) -> tuple[pb.ModelDesc, search_pb2.GalleryEntry]:
        """The final descriptor: the last model, or the hull's knee, or the best hull model in the budget."""
        p, run = self.p, self.run
        entries = list(self.gallery.entries)
        points = gallery_lib.gallery_points(self.gallery)
        hull = gallery_lib.lower_hull(points)
        chosen = len(entries) - 1
        if p.pick == Pick.HULL_KNEE:
            chosen = gallery_lib.knee(points, hull)
        elif p.pick == Pick.BUDGET:
            within = gallery_lib.within_budget(points, hull, p.max_multiply_adds)
            if within is None:
                within = min(hull, key=lambda k: points[k][0])
                print(f"warning: no hull model of the gallery has at most {p.max_multiply_adds:,} multiply-adds; "
                      f"picked the cheapest, gallery #{entries[within].index} ({entries[within].multiply_adds:,})")
            chosen = within
        entry = entries[chosen]
        final = descriptors.load_model_desc(run.out / rundir.GALLERY_DIR / f"{entry.index}.pbtxt")
        final.source = f"{final.source}, gallery #{entry.index}"
        if run.verbose:
            print(f"picked gallery #{entry.index} ({Pick.Name(p.pick).lower()}): iteration {entry.iteration} "
                  f"{entry.phase}, val_error {entry.val_error:.4f}, {entry.multiply_adds:,} multiply-adds")
        return final, entry
