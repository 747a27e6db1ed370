"""Metering: SSE parsing, usage extraction per wire format, tiktoken counting."""
