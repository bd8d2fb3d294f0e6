"""Training jobs of ``train.py`` (one module per job) and their shared pieces.

* ``clip_job``: a small open_clip CLIP trained from scratch with prompts from the class names;
* ``prior_job``: a dalle2_pytorch diffusion prior over cached CLIP image embeddings (for CLIPure-Diff);
* ``adv_job``: FARE / TeCoA adversarial fine-tuning of the image encoder;
* ``common``, ``data``, ``image_cache``, ``embed_cache``: loop, data and cache helpers;
* ``dispatch.run_train``: builds the run folder and dispatches on ``cfg.job``.

Nothing heavy is imported here; each job imports its dependencies when it runs.
"""
