"""What every verb shares: tensor actions, the streaming executor, the output checks, staging."""
