"""The neural pulse predictor: (G_start, G_target, V, device latent) → pulse width.

Modules: ``features`` (definitions), ``dataset`` (simulated records, the service's export),
``train`` (PyTorch, the ``train`` extra; only ``memprog train`` imports it), ``runtime``
(onnxruntime: batched, thread-safe inference, input checks, latent inference, reload),
``control`` (the predict → pulse → read → re-predict policy), ``strategy`` (the ``predictor``
strategy of the programming core, registered by the service), ``scores`` (accuracy scores),
``evaluate`` (held-out scenarios and baselines) and ``benchmark`` (``memprog benchmark
programming``). Layer: above ``programming``, ``drivers`` and ``sim_backend``; never imports
``service``.
The runtime, the policy and the service never import torch.
"""
