# Loads the real Snakefile (and so its config handling), then prints the config the workflow sees.
import json


include: "../../Snakefile"


print("CONFIG>>" + json.dumps(config) + "<<CONFIG")
