"""PetriDish behind the search protocol: the seed's loop of `search.petridish.n_search_iter` iterations.

    desc = seed_model(macro_desc)
    for i = 1 .. n:
        if pre_train.epochs > 0 and every node has edges:        (all empty: nothing to train; a mix: error)
            model = compile(desc) with the parent's weights; train it     loop search/petridish/iter-i/pretrain
            the parent is now that model (its descriptor is unchanged)           -> gallery row
        model = compile(grow(desc, i)) with the parent's weights (grown projections keep their old part)
        arch-train it: weights and candidate weights in one step, L1 on the latter  .../iter-i/archtrain
        desc = finalize(model); the finalised model keeps the trained weights    -> gallery row
        (joins start as the weighted sum of their candidates)

Each loop is keyed (tfnas.checkpoints): a killed search resumes inside the loop it was in; loops that
finished restore their final state instead of training again. Every new weight is initialised from
(seed, iteration, phase) alone, so a resumed search rebuilds what an uninterrupted one built. Files
besides the runner's: gallery.tsv, gallery.png (error against multiply-adds and the lower convex hull),
gallery.pbtxt and gallery/<i>.pbtxt; in TensorBoard, one step per iteration. The final descriptor is
the last iteration's, or the hull model `search.petridish.pick` chooses.
"""
from __future__ import annotations

from tfnas.proto import config_pb2
from tfnas.proto import descriptors_pb2 as pb
from tfnas.search import algorithm as algorithm_lib
from tfnas.search.algorithm import Algorithm, check

Pick = config_pb2.PetridishConfig.Pick


class Petridish(Algorithm):
    name = "PETRIDISH"

    def validate(self, config: config_pb2.ExperimentConfig) -> None:
        from tfnas.config import check_enum, check_optimizer

        p = config.search.petridish
        check(p.n_search_iter >= 1, "search.petridish.n_search_iter", ">= 1", p.n_search_iter)
        check(p.l1 >= 0, "search.petridish.l1", ">= 0", p.l1)
        check(p.kept_candidates >= 1, "search.petridish.kept_candidates", ">= 1", p.kept_candidates)
        check(p.candidate_init_scale >= 0, "search.petridish.candidate_init_scale", ">= 0", p.candidate_init_scale)
        pre = p.pre_train
        for name in ("epochs", "max_steps_per_epoch", "checkpoint_every_steps"):
            check(getattr(pre, name) >= 0, f"search.petridish.pre_train.{name}", ">= 0", getattr(pre, name))
        if pre.epochs:
            check(pre.batch_size >= 1, "search.petridish.pre_train.batch_size", ">= 1", pre.batch_size)
            check_optimizer("search.petridish.pre_train.optimizer", pre.optimizer)
        check(config.search.trainer.epochs >= 1, "search.trainer.epochs", ">= 1 (PetriDish arch-trains every "
              "iteration)", config.search.trainer.epochs)
        check_enum("search.petridish", p, "pick")
        if p.pick == Pick.BUDGET:
            check(p.max_multiply_adds > 0, "search.petridish.max_multiply_adds", "> 0 with pick: BUDGET",
                  p.max_multiply_adds)
        check(config.search.macro.project_output, "search.macro.project_output",
              "true for PETRIDISH (a growing cell must keep its output width)", config.search.macro.project_output)
        algorithm_lib.check_primitives("search.petridish.primitives", p.primitives, allow_none=False)

    def run(self, run) -> pb.ModelDesc | None:
        from tfnas.search.petridish.search import PetridishSearch
        return PetridishSearch(run).search()


ALGORITHM = Petridish()
