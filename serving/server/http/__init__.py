"""The V2 HTTP/REST transport and the zoo page, beside gRPC on the same dataplane."""
