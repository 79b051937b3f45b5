/* The network workloads of /bin/peer (net.c); see net.c for what each does. */
#ifndef PEER_NET_H
#define PEER_NET_H
int echo_server(int port);
/* argv: IP PORT CONNECTIONS MESSAGE_BYTES DURATION */
int echo_client(int argc, char **argv);
/* argv: IP PORT PATH CONNECTIONS DURATION */
int http_load(int argc, char **argv);
/* bulk-sink PORT; bulk-send argv: IP PORT CONNECTIONS TOTAL_BYTES [CHUNK_BYTES] */
int bulk_sink(int port);
int bulk_send(int argc, char **argv);
#endif
