"""The notifier: lifecycle events become assistant messages and signed, retried webhooks."""
