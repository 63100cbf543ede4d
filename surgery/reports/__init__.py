"""What a checkpoint holds, and an output proven against its source."""
