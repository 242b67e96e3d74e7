"""Rule-based custom segments beside the learned personas."""
