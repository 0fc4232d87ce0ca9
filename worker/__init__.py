"""Celery workers that adapt bases to support sets (`worker.celery_app:app`)."""
