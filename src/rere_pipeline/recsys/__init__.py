"""Framework-free core of the recommender: importable and testable without Kedro."""
