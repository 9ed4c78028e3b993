"""``uhn bench``: how fast and how lean generation and training are, against the naive
one-batch generator and the machine's own matmul throughput, measured in one run
(``run.py``; the report: ``report.py``).

Each case runs in a fresh worker process (``python -m uhn_tools.bench.worker``), so that its peak
memory is its own: the parent compiles the plan once, saves it to a temporary file, and reads
one JSON line back from every worker. Cases:

* ``matmul``: the device's matmul throughput: a 4096^3 product (``--matmul-size``; 1024^3
  where bf16 is emulated, on a CPU without AMX or AVX512-BF16, whose bf16 matmuls run at a
  small fraction of fp32's), and a product shaped like the generator's (feature table x
  modulated weight), in the run's precision.
* ``generate``: one generation of the target's weights, without gradients.
* ``train_step``: ``Trainer.train_step``, the step ``uhn train`` runs (generation, target
  forward/backward on a synthetic batch, clipping, AdamW; ``training.py``), its default step.
* ``exact_train_step``: the same trainer's exact step (``uhn train --exact``: micro-shards);
  the report gives its ratio to the default step (``exact_train_step.vs_default``).
* ``naive_generate``, ``naive_train_step``: generation and the default train step with the
  naive generator (``uhn_runtime.model.naive``; the train step through the same trainer, the
  naive generator its weight source), when its estimated memory fits; otherwise the report
  says why and gives ``"naive": null``.

* ``family_step`` (a plan with several targets): the family trainer's steps, each on the
  architectures its sampler draws for that step (through the run's ``TargetCache`` and layout
  cache), so switching architecture and building targets, layouts and feature tables on cache
  misses are in the time. The other cases then measure
  the seen member closest to the seen members' mean size (unless ``--target``): the report's
  ``family.vs_single`` is the family step time over that single-model step time, also per
  generated weight (the drawn members differ in size).

* ``multitask_step`` (a multi-task plan): in one worker, each member's own train step (a
  streak of its own single-task trainer) and then the multi-task trainer's steps, each on the
  member its sampler draws with the plan's probabilities; every member trains on a synthetic
  batch of its own task. The report's ``multitask.vs_probabilities`` is
  the multi-task step over the members' own steps weighted by the probabilities (the issue's
  target: within 10%), ``vs_draws`` the same weighted by the members actually drawn.

``generate`` also reports ``layout_seconds``: building the work units from the plan's compact
descriptors and their feature tables, what the first generation after loading a plan adds.

Times are the median of ``repeats`` runs after one warm-up run. Peak memory is the process's
resident set (VmHWM, reset after setup) on the CPU, ``max_memory_allocated`` on CUDA.
"""

from .options import DEFAULT_NAIVE_MAX_BYTES, GIB, BenchOptions
from .report import render_report
from .run import run_bench

__all__ = ["DEFAULT_NAIVE_MAX_BYTES", "GIB", "BenchOptions", "render_report", "run_bench"]
