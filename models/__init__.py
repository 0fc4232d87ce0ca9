"""Rapid Adapt's ML core. What serving imports: the networks (`nets`), the inner loop
(`adapt`), image preprocessing, checkpoints and the registry of bases; it needs torch,
numpy, pillow and safetensors only. The research half (`models.research`: task families,
baselines, meta-training, evaluation) is separate; `python -m models.train|evaluate` run it."""
