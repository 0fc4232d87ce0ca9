"""`python -m models.evaluate`: meta-test evaluation (models/research/evaluate.py)."""

from .research.evaluate import main

if __name__ == "__main__":
    main()
