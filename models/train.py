"""`python -m models.train`: meta-training (models/research/train.py)."""

from .research.train import main

if __name__ == "__main__":
    main()
