"""Closing cost of a long online stream: the stream itself vs what happens after it (results,
plots, TensorBoard images), side by side in one run.

    python benchmarks/closing_cost.py [--domains 150] [--eval-all-domains] [--out DIR]

Stand-in data: ``synthetic_shift`` (made here), Tent on a width-8 small CNN, 16 samples per class.
Prints the stream time (adaptation + evaluation), the closing time (``RunLogger.finish``) and
their ratio. See docs/reliability.md ("Closing a run") for recorded numbers.
"""
import argparse
import tempfile
import time

from cl.config import load_config
from cl.loggers import RunLogger
from cl.runner import run


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--domains", type=int, default=150)
    p.add_argument("--eval-all-domains", action="store_true", help="also the domain x domain accuracy matrix")
    p.add_argument("--out", default=None)
    a = p.parse_args()
    out = a.out or tempfile.mkdtemp(prefix="closing_cost_")
    cfg = load_config(None, [
        "scenario.name=synthetic_shift", f"scenario.n_domains={a.domains}", "scenario.n_per_class=16",
        "scenario.shift=0.002", "model.name=small_cnn", "model.args.width=8", "strategy.name=tent",
        "strategy.batch_size=32", f"eval_all_domains={str(a.eval_all_domains).lower()}", f"output_dir={out}",
        "logging.progress=false", "logging.console=false", "threads=1"])
    timed = {}
    finish = RunLogger.finish

    def timed_finish(self, results):
        t0 = time.perf_counter()
        finish(self, results)
        timed["finish"] = time.perf_counter() - t0

    RunLogger.finish = timed_finish
    res = run(cfg, f"{out}/run")
    stream = res["timings"]["total_s"]
    print(f"{a.domains} domains{' + eval_all_domains' if a.eval_all_domains else ''}: stream {stream:.1f} s, "
          f"closing {timed['finish']:.1f} s, closing/stream {timed['finish'] / stream:.2f}  (run folder {out}/run)")


if __name__ == "__main__":
    main()
