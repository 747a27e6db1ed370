"""Billing: money, rate tables and the PostgreSQL credit ledger."""
