"""What tensors and configs mean: vocabulary and layer tensor names, config keys per family."""
