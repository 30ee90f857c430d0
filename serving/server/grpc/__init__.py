"""The gRPC transport of the V2 server: a servicer converting messages to and from the
dataplane, authentication, and the server process around them."""
