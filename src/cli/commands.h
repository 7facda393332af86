/* `bitnet` subcommands: thin wrappers over the layers. Each returns a process exit status. */
#ifndef BN_CLI_COMMANDS_H
#define BN_CLI_COMMANDS_H

int cmd_inspect(int argc, char **argv);
int cmd_convert(int argc, char **argv);
int cmd_mkmodel(int argc, char **argv);
int cmd_tokenize(int argc, char **argv);
int cmd_run(int argc, char **argv);
int cmd_bench(int argc, char **argv);
int cmd_perplexity(int argc, char **argv);
int cmd_loadtest(int argc, char **argv);

#endif
