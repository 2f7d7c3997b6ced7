"""Training, evaluation and prediction loops shared by every detector."""
