"""The MLOps loop around the recommender: serving, registry promotion, tuning, retraining."""
