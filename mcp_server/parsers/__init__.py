"""Pure parsers: command output text in, validated pydantic models out."""
