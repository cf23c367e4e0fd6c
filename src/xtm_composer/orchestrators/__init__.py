"""Orchestrator adapters. Each adapter imports only `base`, `naming` and its SDK."""
