"""moecast: the command line that ties the model, the bundle tools and the edge agent together."""
