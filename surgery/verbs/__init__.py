"""Each verb decides what to keep and emits a plan: vocabulary trim, drop-layers, width pruning."""
