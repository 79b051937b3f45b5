/* The latency workloads of /bin/peer (latency.c); see latency.c for what each does. */
#ifndef PEER_LATENCY_H
#define PEER_LATENCY_H
int sleep_lateness(long n, long period_us);
int spin(void);
/* Runs run(argc, argv) beside k spinning processes. */
int spinning(long k, int argc, char **argv, int (*run)(int, char **));
/* argv: echo-client's arguments after IP PORT. */
int echo_pair(int port, int argc, char **argv);
/* Brings the loopback interface up (peer.c). */
int loopback_up(void);
#endif
