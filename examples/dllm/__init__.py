"""A toy masked-diffusion language model fine-tuned by RL.

The pieces of the study in ``examples/dllm_rl.py``:

* :mod:`dllm.config`: every knob of one run (:class:`~dllm.config.Config`);
* :mod:`dllm.model`: the bidirectional transformer, its per-token
  log-likelihoods under a diffusion mask, and the masked-diffusion warm start;
* :mod:`dllm.sampler`: the sorting task, its reward, and iterative
  confidence-based unmasking (the rollouts);
* :mod:`dllm.rl_step`: one RL step, built from the library's estimators and
  losses;
* :mod:`dllm.plots`: the figures.
"""
