"""Distillation: relational losses and the memory queue (shared by MPQ-DM, MPQ-DMv2 and RDD),
progressive and RDD step distillation."""
