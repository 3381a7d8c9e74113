"""Random search behind the search protocol: sample, train, score, keep the best.

Each of `search.random.trials` trials is the seed's algorithm once: sample a cell pair (the micro
builder), compile it with the search options, train it for `search.random.epochs` on the weight half of
the search split, and score it by top-1 accuracy on the architecture half. Each trial is a keyed loop of
its own (`search/random/trial-<i>`, its output result.json): a killed search resumes inside the trial it
was in, and a finished trial is not trained again. The best trial (ties: the earliest) is the final
descriptor. Files: trials.tsv (one line per finished trial, deterministic for a seed) and, in TensorBoard,
one step per trial.
"""
from __future__ import annotations

import json
import time

from tfnas.proto import config_pb2
from tfnas.proto import descriptors_pb2 as pb
from tfnas.search import algorithm as algorithm_lib
from tfnas.search.algorithm import Algorithm, check

RESULT_FILE = "result.json"
TSV_COLUMNS = ("trial", "val_accuracy", "params", "multiply_adds", "genotype")


class RandomSearch(Algorithm):
    name = "RANDOM"

    def validate(self, config: config_pb2.ExperimentConfig) -> None:
        r = config.search.random
        check(r.trials >= 1, "search.random.trials", ">= 1", r.trials)
        check(r.epochs >= 1, "search.random.epochs", ">= 1", r.epochs)
        check(1 <= r.edges_per_node <= 2, "search.random.edges_per_node",
              "1 or 2 (the first node of a cell reads only its two inputs)", r.edges_per_node)
        algorithm_lib.check_primitives("search.random.primitives", r.primitives)

    def run(self, run) -> pb.ModelDesc | None:
        import tensorflow as tf

        from tfnas import checkpoints, describe, genotypes, rundir
        from tfnas.files import write_atomic
        from tfnas.search import random as random_lib
        from tfnas.train import optim
        from tfnas.train.supervised import SupervisedTrainer

        s, r = run.config.search, run.config.search.random
        results = []
        for trial in range(r.trials):
            key = checkpoints.random_trial_key(trial)
            result_path = checkpoints.outputs_dir(run.out, key) / RESULT_FILE
            if checkpoints.is_done(run.out, key):
                results.append(json.loads(result_path.read_text()))
                continue
            desc = random_lib.sample(run.macro_desc, list(r.primitives), r.edges_per_node, run.seed, trial)
            seed = random_lib.trial_seed(run.seed, trial)
            net = run.compile(desc, seed)  # the trial's initial weights depend on (seed, trial) alone
            stream = run.stream(run.weight_split, seed)
            steps = run.steps_per_epoch([stream])
            opt = optim.make_optimizer(s.trainer.optimizer, r.epochs, steps, "optimizer")
            trainer = SupervisedTrainer(net, opt, s.trainer.optimizer)
            if run.verbose:
                print(f"trial {trial + 1}/{r.trials}: {genotypes.format_genotype(genotypes.from_desc(desc))}")
            start = time.perf_counter()

            def score(out, logs, trial=trial, desc=desc, net=net, key=key, start=start):
                """The trial's output: its score and size (committed before its done marker)."""
                size = describe.describe(desc, key)  # what `tfnas describe` reports of the trial's architecture
                result = {"trial": trial, "val_accuracy": run.accuracy(net, run.arch_split),
                          "params": size["params"], "multiply_adds": size["multiply_adds"],
                          "genotype": size["genotype"], "seconds": time.perf_counter() - start}
                write_atomic(out / RESULT_FILE, json.dumps(result, indent=1))

            _, done = run.train(key, trainer, [stream], r.epochs, steps, outputs=score)
            if not done:
                return None
            result = json.loads(result_path.read_text())
            results.append(result)
            run.save(rundir.TRIALS, trials_tsv(results))
            with run.writer.as_default(step=trial + 1):
                for name in ("val_accuracy", "params", "multiply_adds", "seconds"):
                    tf.summary.scalar(f"trial/{name}", result[name])
                tf.summary.scalar("trial/best_val_accuracy", max(x["val_accuracy"] for x in results))
            run.writer.flush()
            if run.verbose:
                print(f"trial {trial + 1}: val_accuracy {result['val_accuracy']:.4f}")
        run.save(rundir.TRIALS, trials_tsv(results))
        best = max(results, key=lambda x: (x["val_accuracy"], -x["trial"]))
        final = random_lib.sample(run.macro_desc, list(r.primitives), r.edges_per_node, run.seed, best["trial"])
        if run.verbose:
            print(f"best: trial {best['trial'] + 1} of {r.trials}, val_accuracy {best['val_accuracy']:.4f}")
        return final


def trials_tsv(results: list[dict]) -> str:
    """One line per trial, the columns of TSV_COLUMNS: what a seed determines (no timings)."""
    rows = ["\t".join(TSV_COLUMNS)]
    for x in sorted(results, key=lambda x: x["trial"]):
        rows.append(f"{x['trial']}\t{x['val_accuracy']:.6f}\t{x['params']}\t{x['multiply_adds']}\t{x['genotype']}")
    return "\n".join(rows) + "\n"


ALGORITHM = RandomSearch()
