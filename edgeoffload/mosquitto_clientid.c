/* edgeoffload_clientid: a Mosquitto 2 plugin that binds MQTT client ids to broker accounts.
 *
 * Mosquitto disconnects a client when another connects with the same client id, whatever its
 * account: any login could take over another account's session (and its queued messages). This
 * plugin refuses a CONNECT unless the client id is the username itself or starts with
 * "<username>-", so an account can only ever use, and take over, its own ids. Several replicas can
 * still share one account, each with its own "<username>-<pod>-..." id.
 *
 * It only refuses: an id that fits is deferred to the password file, which still checks the
 * password (plugins registered at start-up run before the password file's check).
 * Built by edgeoffload.brokerplugin (local runs) and the Dockerfile's `broker` target (Kubernetes).
 */
#include <stddef.h>
#include <string.h>

#include <mosquitto.h>
#include <mosquitto_broker.h>
#include <mosquitto_plugin.h>

static mosquitto_plugin_id_t *plugin_id = NULL;

static int id_belongs_to(const char *client_id, const char *username)
{
	size_t length = strlen(username);
	return strncmp(client_id, username, length) == 0
		&& (client_id[length] == '\0' || client_id[length] == '-');
}

static int on_basic_auth(int event, void *event_data, void *userdata)
{
	struct mosquitto_evt_basic_auth *auth = event_data;
	const char *client_id = mosquitto_client_id(auth->client);
	(void)event;
	(void)userdata;

	if(auth->username == NULL){
		return MOSQ_ERR_PLUGIN_DEFER;  /* anonymous: allow_anonymous decides */
	}
	if(client_id != NULL && id_belongs_to(client_id, auth->username)){
		return MOSQ_ERR_PLUGIN_DEFER;
	}
	mosquitto_log_printf(MOSQ_LOG_NOTICE,
		"edgeoffload_clientid: refused client id '%s' for user '%s' (ids must be the user name or start with '%s-')",
		client_id ? client_id : "", auth->username, auth->username);
	return MOSQ_ERR_AUTH;
}

int mosquitto_plugin_version(int supported_version_count, const int *supported_versions)
{
	int i;
	for(i = 0; i < supported_version_count; i++){
		if(supported_versions[i] == 5){
			return 5;
		}
	}
	return -1;
}

int mosquitto_plugin_init(mosquitto_plugin_id_t *identifier, void **userdata,
		struct mosquitto_opt *options, int option_count)
{
	(void)userdata;
	(void)options;
	(void)option_count;
	plugin_id = identifier;
	return mosquitto_callback_register(plugin_id, MOSQ_EVT_BASIC_AUTH, on_basic_auth, NULL, NULL);
}

int mosquitto_plugin_cleanup(void *userdata, struct mosquitto_opt *options, int option_count)
{
	(void)userdata;
	(void)options;
	(void)option_count;
	return mosquitto_callback_unregister(plugin_id, MOSQ_EVT_BASIC_AUTH, on_basic_auth, NULL);
}
