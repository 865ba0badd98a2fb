"""Tensor- and pipeline-parallel building blocks: process groups, sharded layers, collectives."""
