"""The research half of `models`: task families and their data (Omniglot, sinusoids, Noto
glyphs, image folders), baselines, meta-training and evaluation. Serving never imports it;
it alone needs the `training` extra (tqdm, matplotlib)."""
